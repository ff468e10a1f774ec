//! The subscribers role: lists, subscribers and memberships over gRPC.
//! Every change is published on `subscriber-events` for the roles that
//! project subscriber state (segmentation).

mod convert;

use broadside_bus::{DynBus, Record, Topic};
use broadside_mail::address::{check_header_value, validate_address};
use broadside_proto::v1::subscriber_service_server::{SubscriberService, SubscriberServiceServer};
use broadside_proto::v1::*;
use broadside_proto::{ServiceError, names};
use broadside_store::{DEFAULT_TENANT, DynStore, PageRequest, SubscriberStatus, new_id, now_millis};
use prost::Message as _;
use tonic::{Request, Response, Status};

pub use convert::{list_to_proto, subscriber_to_proto};

/// The subscriber API, independent of gRPC so it can be called directly.
#[derive(Clone)]
pub struct SubscriberApi {
    store: DynStore,
    bus: DynBus,
    events_topic: String,
}

const MAX_DISPLAY_NAME: usize = 200;

impl SubscriberApi {
    pub fn new(store: DynStore, bus: DynBus, topic_prefix: &str) -> Self {
        Self { store, bus, events_topic: Topic::SubscriberEvents.name(topic_prefix) }
    }

    /// The tonic service for this API.
    pub fn into_service(self) -> SubscriberServiceServer<Self> {
        SubscriberServiceServer::new(self)
    }

    pub async fn create_list(&self, request: CreateListRequest) -> Result<MailingList, ServiceError> {
        let list = request.list.unwrap_or_default();
        let display_name = list.display_name.trim();
        if display_name.is_empty() {
            return Err(ServiceError::invalid("list.display_name", "is required"));
        }
        if display_name.chars().count() > MAX_DISPLAY_NAME {
            return Err(ServiceError::invalid(
                "list.display_name",
                format!("is longer than {MAX_DISPLAY_NAME} characters"),
            ));
        }
        check_header_value("list.display_name", display_name).map_err(mail_error)?;
        let stored = self
            .store
            .create_list(
                broadside_store::MailingList {
                    tenant: DEFAULT_TENANT.into(),
                    id: new_id(),
                    display_name: display_name.to_owned(),
                    description: list.description,
                    create_time: now_millis(),
                },
                non_empty(request.request_id),
            )
            .await?;
        tracing::info!(list = %stored.id, "list created");
        Ok(list_to_proto(&stored))
    }

    pub async fn get_list(&self, request: GetListRequest) -> Result<MailingList, ServiceError> {
        let id = names::parse("name", &request.name, "lists")?;
        let list = self
            .store
            .get_list(DEFAULT_TENANT, id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(request.name.clone()))?;
        Ok(list_to_proto(&list))
    }

    pub async fn list_lists(&self, request: ListListsRequest) -> Result<ListListsResponse, ServiceError> {
        let page = self
            .store
            .list_lists(DEFAULT_TENANT, PageRequest::new(request.page_size.into(), &request.page_token))
            .await?;
        Ok(ListListsResponse {
            lists: page.items.iter().map(list_to_proto).collect(),
            next_page_token: page.next_token.unwrap_or_default(),
        })
    }

    pub async fn delete_list(&self, request: DeleteListRequest) -> Result<(), ServiceError> {
        let id = names::parse("name", &request.name, "lists")?;
        if !self.store.delete_list(DEFAULT_TENANT, id).await? {
            return Err(ServiceError::NotFound(request.name));
        }
        Ok(())
    }

    pub async fn create_subscriber(&self, request: CreateSubscriberRequest) -> Result<Subscriber, ServiceError> {
        let subscriber = request.subscriber.unwrap_or_default();
        let email = subscriber.email.trim().to_owned();
        validate_address("subscriber.email", &email).map_err(mail_error)?;
        check_header_value("subscriber.display_name", &subscriber.display_name).map_err(mail_error)?;
        if subscriber.display_name.chars().count() > MAX_DISPLAY_NAME {
            return Err(ServiceError::invalid(
                "subscriber.display_name",
                format!("is longer than {MAX_DISPLAY_NAME} characters"),
            ));
        }
        let mut lists = Vec::with_capacity(subscriber.lists.len());
        for (index, name) in subscriber.lists.iter().enumerate() {
            lists.push(names::parse(&format!("subscriber.lists[{index}]"), name, "lists")?.to_owned());
        }
        let attributes =
            subscriber.attributes.as_ref().map(broadside_proto::convert::struct_to_json).unwrap_or_default();
        let (stored, created) = self
            .store
            .upsert_subscriber(
                broadside_store::Subscriber {
                    tenant: DEFAULT_TENANT.into(),
                    id: new_id(),
                    email,
                    display_name: subscriber.display_name.trim().to_owned(),
                    attributes,
                    status: SubscriberStatus::Active,
                    lists: lists.clone(),
                    create_time: 0,
                    update_time: 0,
                },
                non_empty(request.request_id),
            )
            .await
            .map_err(|error| match error {
                broadside_store::StoreError::NotFound(what) => {
                    ServiceError::NotFound(format!("subscriber.lists: {what}"))
                }
                other => other.into(),
            })?;
        self.publish_upsert(&stored, &lists).await?;
        tracing::debug!(subscriber = %stored.id, created, "subscriber stored");
        Ok(subscriber_to_proto(&stored))
    }

    /// Publishes the new state, then one subscription change per list joined.
    /// Runs again on a retried request, so consumers see the state at least once.
    async fn publish_upsert(&self, stored: &broadside_store::Subscriber, lists: &[String]) -> Result<(), ServiceError> {
        let event = |change| SubscriberEvent {
            tenant: stored.tenant.clone(),
            subscriber_id: stored.id.clone(),
            time: broadside_proto::convert::millis_to_timestamp(now_millis()),
            change: Some(change),
        };
        let mut records = vec![event(subscriber_event::Change::Upserted(SubscriberUpserted {
            email: stored.email.clone(),
            display_name: stored.display_name.clone(),
            attributes: Some(broadside_proto::convert::json_to_struct(&stored.attributes)),
            status: format!("{:?}", stored.status).to_lowercase(),
        }))];
        for list_id in lists {
            records.push(event(subscriber_event::Change::SubscriptionChanged(SubscriptionChanged {
                list_id: list_id.clone(),
                subscribed: true,
                source: "api".into(),
            })));
        }
        let records = records
            .into_iter()
            .map(|e| Record::event(&stored.id, &stored.tenant, "broadside.v1.SubscriberEvent", e.encode_to_vec(), None))
            .collect();
        self.bus.publish(&self.events_topic, records).await?;
        Ok(())
    }

    pub async fn get_subscriber(&self, request: GetSubscriberRequest) -> Result<Subscriber, ServiceError> {
        let id = names::parse("name", &request.name, "subscribers")?;
        let subscriber = self
            .store
            .get_subscriber(DEFAULT_TENANT, id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(request.name.clone()))?;
        Ok(subscriber_to_proto(&subscriber))
    }

    pub async fn list_subscribers(
        &self,
        request: ListSubscribersRequest,
    ) -> Result<ListSubscribersResponse, ServiceError> {
        let page = PageRequest::new(request.page_size.into(), &request.page_token);
        let page = if request.parent.is_empty() {
            self.store.list_subscribers(DEFAULT_TENANT, page).await?
        } else {
            let list_id = names::parse("parent", &request.parent, "lists")?;
            if self.store.get_list(DEFAULT_TENANT, list_id).await?.is_none() {
                return Err(ServiceError::NotFound(request.parent));
            }
            self.store.list_members(DEFAULT_TENANT, list_id, false, page).await?
        };
        Ok(ListSubscribersResponse {
            subscribers: page.items.iter().map(subscriber_to_proto).collect(),
            next_page_token: page.next_token.unwrap_or_default(),
        })
    }
}

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

fn mail_error(error: broadside_mail::MailError) -> ServiceError {
    error.into_service_error("")
}

#[tonic::async_trait]
impl SubscriberService for SubscriberApi {
    async fn create_list(&self, request: Request<CreateListRequest>) -> Result<Response<MailingList>, Status> {
        Ok(Response::new(SubscriberApi::create_list(self, request.into_inner()).await?))
    }
    async fn get_list(&self, request: Request<GetListRequest>) -> Result<Response<MailingList>, Status> {
        Ok(Response::new(SubscriberApi::get_list(self, request.into_inner()).await?))
    }
    async fn list_lists(&self, request: Request<ListListsRequest>) -> Result<Response<ListListsResponse>, Status> {
        Ok(Response::new(SubscriberApi::list_lists(self, request.into_inner()).await?))
    }
    async fn delete_list(&self, request: Request<DeleteListRequest>) -> Result<Response<()>, Status> {
        SubscriberApi::delete_list(self, request.into_inner()).await?;
        Ok(Response::new(()))
    }
    async fn create_subscriber(
        &self,
        request: Request<CreateSubscriberRequest>,
    ) -> Result<Response<Subscriber>, Status> {
        Ok(Response::new(SubscriberApi::create_subscriber(self, request.into_inner()).await?))
    }
    async fn get_subscriber(&self, request: Request<GetSubscriberRequest>) -> Result<Response<Subscriber>, Status> {
        Ok(Response::new(SubscriberApi::get_subscriber(self, request.into_inner()).await?))
    }
    async fn list_subscribers(
        &self,
        request: Request<ListSubscribersRequest>,
    ) -> Result<Response<ListSubscribersResponse>, Status> {
        Ok(Response::new(SubscriberApi::list_subscribers(self, request.into_inner()).await?))
    }
    async fn update_subscriber(&self, _: Request<UpdateSubscriberRequest>) -> Result<Response<Subscriber>, Status> {
        Err(ServiceError::Unimplemented("UpdateSubscriber").into())
    }
    async fn delete_subscriber(&self, _: Request<DeleteSubscriberRequest>) -> Result<Response<()>, Status> {
        Err(ServiceError::Unimplemented("DeleteSubscriber").into())
    }
    async fn import_subscribers(
        &self,
        _: Request<tonic::Streaming<ImportSubscribersRequest>>,
    ) -> Result<Response<ImportSubscribersResponse>, Status> {
        Err(ServiceError::Unimplemented("ImportSubscribers").into())
    }
    async fn add_suppression(&self, _: Request<AddSuppressionRequest>) -> Result<Response<Suppression>, Status> {
        Err(ServiceError::Unimplemented("AddSuppression").into())
    }
}
